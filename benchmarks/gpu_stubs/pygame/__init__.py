"""Import stub for pygame on the GPU machine (the 64 MiB carry limit leaves no room for its
12 MB wheel). minigrid imports pygame at module level but uses it only to draw a window
(render_mode="human"), which a headless run never asks for; any use fails loudly."""


def __getattr__(name):
    raise AttributeError(f"pygame.{name}: pygame is a stub on this machine (no window rendering)")
