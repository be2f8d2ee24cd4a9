"""`opengato serve`'s API: every action and every bad input, episodes that stay apart across
tabs and threads, and a served episode being the evaluation episode of its seed. The page itself,
in Chromium, is tested in tests/test_serve_browser.py with the fixtures of this file."""

from __future__ import annotations

import base64
import io
import shutil
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from opengato import cli
from opengato.agent.eval_config import EvalConfig
from opengato.agent.rollout import evaluate_task
from opengato.agent.scores import normalized_score
from opengato.data.collect import CollectConfig, run_collect
from opengato.data.images import make_scenes
from opengato.data.scores import load_scores
from opengato.model.checkpoint import load_agent, save_checkpoint
from opengato.model.gato import Gato
from opengato.model.presets import make_config
from opengato.seeds import EVAL_SEED_START
from opengato.serve.app import ServeConfig, Server, make_app
from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig

CARTPOLE, BABYAI = "classic/CartPole-v1", "babyai/GoToRedBallNoDists"
MB = 1_000_000


def tiny_checkpoint(folder: Path, seed: int, data: str) -> Path:
    """An untrained gato-tiny run folder, its weights drawn with `seed` and large, so that its
    actions and words depend on what it sees and two seeds play and talk differently."""
    tcfg = TokenizerConfig(text_vocab_size=1024)
    torch.manual_seed(seed)
    mcfg = make_config("gato-tiny", Tokenizer(tcfg).vocab_size, context_len=256, dropout=0.0)
    model = Gato(mcfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
    save_checkpoint(folder / "step_1", model, mcfg, tcfg, {"tasks": CARTPOLE, "data_dir": data})
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    data = str(root / "data")  # CartPole demonstrations (prompts) and scores; none of BabyAI
    run_collect(CollectConfig(tasks=CARTPOLE, episodes=2, random_episodes=2, data_dir=data,
                              workers=1))  # fmt: skip
    a, b = tiny_checkpoint(root / "a", 0, data), tiny_checkpoint(root / "b", 1, data)
    return SimpleNamespace(root=root, data=data, a=str(a), b=str(b))


def serve_config(setup, **kw) -> ServeConfig:
    return ServeConfig(checkpoint=setup.a, data_dir=setup.data, **kw)


@pytest.fixture(scope="module")
def client(setup):
    with TestClient(make_app(Server(serve_config(setup)))) as c:
        yield c


@pytest.fixture(scope="module")
def live(setup):
    """The app on a real uvicorn server, on a free port, in a thread: its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(make_app(Server(serve_config(setup))), log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started, "the server did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    uv.should_exit = True
    thread.join(10)


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def play(client, task: str, seed: int, checkpoint: str | None = None, steps: int = 600):
    """Start an episode and step it to its end (or `steps`): its first view and the others."""
    first = ok(client.post("/api/episodes", json={"task": task, "seed": seed,
                                                  "checkpoint": checkpoint}))  # fmt: skip
    views = []
    while len(views) < steps and not (views or [first])[-1]["done"]:
        views.append(ok(client.post(f"/api/episodes/{first['id']}/step")))
    return first, views


def image_of(data_url: str) -> Image.Image:
    head, b64 = data_url.split(",", 1)
    assert head == "data:image/jpeg;base64"
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def scene() -> Image.Image:
    """A generated scene of the kind the caption data holds (64 x 64)."""
    row = make_scenes(1, seed=3)[0]
    return Image.fromarray(
        np.frombuffer(row["image"], np.uint8).reshape(row["height"], row["width"], 3)
    )


def png(size=(100, 80), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- the API


def test_page_and_info(client):
    assert "/static/app.js" in client.get("/").text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    info = ok(client.get("/api/info"))
    assert {CARTPOLE, BABYAI} <= set(info["tasks"]) and info["default_seed"] == EVAL_SEED_START
    assert info["checkpoint"].endswith("step_1") and info["model"] == "gato-tiny"
    assert info["max_upload_mb"] == 10


def test_a_served_episode_is_the_evaluation_episode_of_its_seed(client, setup):
    first, views = play(client, CARTPOLE, EVAL_SEED_START)
    assert first["step"] == 0 and first["return"] == 0 and first["notes"] == []  # prompted
    assert image_of(first["frame"]).size == (600, 400)
    table = load_scores(setup.data)[CARTPOLE]
    assert first["reference"]["expert"] == table["expert"]
    assert first["reference"]["random"] == table["random"]
    assert [v["step"] for v in views] == list(range(1, len(views) + 1)) and views[-1]["done"]
    for v in views:
        assert v["action_tokens"] in ([0], [1]) and v["action"] == v["action_tokens"][0]
        assert v["reward"] == 1.0 and image_of(v["frame"]).size == (600, 400)
    agent = client.app.state.server.agents.pinned
    cfg = EvalConfig(checkpoint=setup.a, episodes=1, num_envs=1, data_dir=setup.data)
    record = evaluate_task(CARTPOLE, cfg, agent)["episodes"][0]
    assert (views[-1]["return"], views[-1]["step"]) == (record["return"], record["length"])
    want = normalized_score(record["return"], table["random"], table["expert"])
    assert views[-1]["normalized"] == pytest.approx(want)
    again = ok(client.post(f"/api/episodes/{first['id']}/step"))  # over: stays over
    assert again["done"] and again["step"] == views[-1]["step"] and again["action"] is None


def test_int8_weights_are_served_and_said(setup):
    """`--weights int8` serves every checkpoint with int8 weights, plays the episode that
    `opengato eval --weights int8` plays for the seed, and /api/info says so."""
    from opengato.model.checkpoint import load_agent

    with TestClient(make_app(Server(serve_config(setup, weights="int8")))) as c:
        assert ok(c.get("/api/info"))["weights"] == "int8"
        assert c.app.state.server.agents.pinned[0].int8
        _, views = play(c, CARTPOLE, EVAL_SEED_START)
        _, other = c.app.state.server.agents.get(setup.b)
        assert other[0].int8
    cfg = EvalConfig(checkpoint=setup.a, episodes=1, num_envs=1, data_dir=setup.data,
                     weights="int8")  # fmt: skip
    record = evaluate_task(CARTPOLE, cfg, load_agent(setup.a, int8=True))["episodes"][0]
    assert (views[-1]["return"], views[-1]["step"]) == (record["return"], record["length"])


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile's CPU backend needs a C++ compiler")  # fmt: skip
def test_compiled_decoding_is_served_and_kept_across_episodes(setup):
    """`--weights compiled` plays the episode that `opengato eval` plays for the seed (fp32:
    the same greedy actions), and a second episode reuses the graphs the first compiled."""
    from opengato.model.compiled import compiled_decoder

    with TestClient(make_app(Server(serve_config(setup, weights="compiled")))) as c:
        assert ok(c.get("/api/info"))["weights"] == "compiled"
        _, views = play(c, CARTPOLE, EVAL_SEED_START)
        decoder = compiled_decoder(c.app.state.server.agents.pinned[0])
        graphs = dict(decoder.graphs)
        assert graphs and decoder.failed is None
        play(c, CARTPOLE, EVAL_SEED_START + 1)
        assert all(decoder.graphs[key] is graph for key, graph in graphs.items())
    cfg = EvalConfig(checkpoint=setup.a, episodes=1, num_envs=1, data_dir=setup.data)
    record = evaluate_task(CARTPOLE, cfg, load_agent(setup.a))["episodes"][0]
    assert (views[-1]["return"], views[-1]["step"]) == (record["return"], record["length"])


def test_babyai_without_demonstrations_plays_unprompted_and_says_so(client):
    first, views = play(client, BABYAI, EVAL_SEED_START, steps=3)
    assert any("no demonstrations of babyai/GoToRedBallNoDists" in n for n in first["notes"])
    assert first["mission"] == "go to the red ball" and image_of(first["frame"]).size[0] > 0
    assert all(len(v["action_tokens"]) == 1 and v["frame"] for v in views)
    low = ok(client.post("/api/episodes", json={"task": BABYAI, "seed": 5}))
    assert any("seed 5 is below 1000000" in n for n in low["notes"])


def test_compare_two_checkpoints_on_one_seed(client, setup):
    """Each side plays its own checkpoint's evaluation episode of the seed, from one start."""
    seed = EVAL_SEED_START + 7
    a, va = play(client, CARTPOLE, seed, None)
    b, vb = play(client, CARTPOLE, seed, setup.b)
    assert a["checkpoint"] != b["checkpoint"] and b["checkpoint"].startswith(setup.b)
    assert image_of(a["frame"]).tobytes() == image_of(b["frame"]).tobytes()  # same start state
    for path, views in ((setup.a, va), (setup.b, vb)):
        cfg = EvalConfig(checkpoint=path, episodes=1, num_envs=1, data_dir=setup.data,
                         start_seed=seed)  # fmt: skip
        record = evaluate_task(CARTPOLE, cfg, load_agent(path))["episodes"][0]
        assert (views[-1]["return"], views[-1]["step"]) == (record["return"], record["length"])
    assert [v["action"] for v in va] != [v["action"] for v in vb]  # two models, two ways
    u, vu = play(client, CARTPOLE, EVAL_SEED_START + 7, "uniform", steps=3)
    assert u["checkpoint"] == "uniform" and vu[0]["action_tokens"] is None and vu[0]["frame"]
    assert ok(client.delete(f"/api/episodes/{u['id']}")) == {"closed": True}
    assert client.post(f"/api/episodes/{u['id']}/step").status_code == 404


def test_caption_and_chat_use_the_served_weights(client, setup):
    from opengato.agent.language import answer, caption_image, prepare_image

    model, tokenizer, _ = client.app.state.server.agents.pinned
    buf = io.BytesIO()
    scene().save(buf, "JPEG")
    for body in (png(), png((20, 300)), buf.getvalue()):
        out = ok(client.post("/api/caption", content=body, headers={"X-Filename": "x.png"}))
        seen = np.asarray(image_of(out["image"]))
        assert seen.shape == (64, 64, 3)
        image = prepare_image(np.asarray(Image.open(io.BytesIO(body)).convert("RGB")))
        assert out["caption"] == caption_image(model, tokenizer, image)
    other = load_agent(setup.b)[0]  # weights matter: the other checkpoint's words differ
    assert out["caption"] != caption_image(other, tokenizer, image)
    out = ok(client.post("/api/chat", json={"message": " What is a list? "}))
    assert out["answer"] == answer(model, tokenizer, "What is a list?", 128)
    assert out["answer"] != answer(other, tokenizer, "What is a list?", 128)


BAD = [  # (path, JSON body or uploaded bytes, status, part of the message)
    ("/api/episodes", {"task": "classic/NoSuchTask"}, 400, "unknown task 'classic/NoSuchTask'"),
    ("/api/episodes", {"task": CARTPOLE, "seed": -1}, 422, "seed: Input should be greater"),
    ("/api/episodes", {"task": CARTPOLE, "seed": "soon"}, 422, "seed: Input should be a valid integer"),
    ("/api/episodes", {"task": ""}, 422, "task: String should have at least 1 character"),
    ("/api/episodes", {"task": CARTPOLE, "checkpoint": "/no/such/run"}, 400,
     "cannot load checkpoint '/no/such/run': checkpoint '/no/such/run' does not exist"),
    ("/api/episodes", {"task": CARTPOLE, "checkpoint": "ROOT"}, 400, "is not an opengato checkpoint"),
    ("/api/episodes", {"task": CARTPOLE, "checkpoint": "random:gato-huge"}, 400, "unknown model preset"),
    ("/api/episodes/feedbeef/step", None, 404, "episode 'feedbeef' is not live"),
    ("/api/caption", b"just some text", 400, "notes.txt is not an image"),
    ("/api/caption", b"", 400, "notes.txt is empty"),
    ("/api/caption", "50 MB", 413, "notes.txt is 50.0 MB; the limit is 10 MB"),
    ("/api/chat", {"message": "   "}, 400, "type a question first"),
    ("/api/chat", {"message": "why? " * 1000}, 422, "message: String should have at most"),
    ("/api/chat", {}, 422, "message: Field required"),
]  # fmt: skip


@pytest.mark.parametrize("path,body,status,message", BAD, ids=[b[-1][:32] for b in BAD])
def test_bad_input_is_a_message_not_a_crash(client, setup, path, body, status, message):
    if body == "50 MB":
        body = bytes(50 * MB)
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"X-Filename": "notes.txt"})
    else:
        if body and body.get("checkpoint") == "ROOT":  # a folder that is no checkpoint
            body = {**body, "checkpoint": str(setup.root)}
        r = client.post(path, json=body)
    assert r.status_code == status and message in r.json()["detail"], r.text
    assert ok(client.get("/api/info"))  # and the server goes on


def test_other_origins_are_refused(client):
    r = client.post("/api/chat", json={"message": "hi"}, headers={"Origin": "http://evil.test"})
    assert r.status_code == 403 and "cross-origin" in r.json()["detail"]


def test_a_large_upload_is_refused_on_a_real_server(live):
    import httpx2

    def chunks():  # no Content-Length: the server finds out while reading
        for _ in range(50):
            yield b"\0" * MB

    r = httpx2.post(f"{live}/api/caption", content=chunks(), headers={"X-Filename": "big.bin"})
    assert r.status_code == 413 and "big.bin is larger than the 10 MB limit" in r.json()["detail"]
    r = httpx2.post(f"{live}/api/caption", content=b"\0" * (50 * MB))
    assert (
        r.status_code == 413 and "the upload is 50.0 MB; the limit is 10 MB" in r.json()["detail"]
    )


def test_an_upload_is_read_no_further_than_the_limit():
    import asyncio

    from fastapi import HTTPException

    from opengato.serve.app import read_upload

    class Upload:  # a request streaming 50 MB with no Content-Length
        headers, read = {}, 0

        async def stream(self):
            for _ in range(50):
                self.read += MB
                yield b"\0" * MB

    upload = Upload()
    with pytest.raises(HTTPException) as e:
        asyncio.run(read_upload(upload, 10 * MB, "big.bin"))
    assert e.value.status_code == 413 and upload.read == 11 * MB
    upload.headers = {"content-length": str(50 * MB)}  # known too large: nothing is read
    with pytest.raises(HTTPException):
        asyncio.run(read_upload(upload, 10 * MB, "big.bin"))
    assert upload.read == 11 * MB


def test_tabs_stepping_at_once_do_not_mix_episodes(live):
    import httpx2

    games = ((CARTPOLE, EVAL_SEED_START + 1), (BABYAI, EVAL_SEED_START + 2))

    def start(c, task: str, seed: int) -> str:
        return ok(c.post("/api/episodes", json={"task": task, "seed": seed}))["id"]

    def steps(episode_id: str, out: list, barrier=None) -> None:
        with httpx2.Client(base_url=live) as c:  # a tab of its own
            if barrier is not None:
                barrier.wait()
            for _ in range(20):
                v = ok(c.post(f"/api/episodes/{episode_id}/step"))
                out.append((v["step"], v["return"], v["action_tokens"], v["frame"]))

    alone = {task: [] for task, _ in games}
    with httpx2.Client(base_url=live) as c:
        for task, seed in games:
            steps(start(c, task, seed), alone[task])
        ids = {task: start(c, task, seed) for task, seed in games}
    together = {task: [] for task, _ in games}
    barrier = threading.Barrier(len(games))
    threads = [threading.Thread(target=steps, args=(ids[t], together[t], barrier)) for t in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert together == alone


def test_old_episodes_are_closed_beyond_capacity(setup):
    with TestClient(make_app(Server(serve_config(setup, max_episodes=2)))) as c:
        ids = [ok(c.post("/api/episodes", json={"task": CARTPOLE}))["id"] for _ in range(3)]
        assert c.post(f"/api/episodes/{ids[0]}/step").status_code == 404
        assert all(c.post(f"/api/episodes/{i}/step").status_code == 200 for i in ids[1:])


def test_cli(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(opt in out for opt in ("CHECKPOINT", "--port", "--host", "--max-upload-mb"))
    assert cli.main(["serve", str(tmp_path / "nope")]) == 1
    assert "CheckpointError: checkpoint" in capsys.readouterr().err
