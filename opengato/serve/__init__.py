"""The web page of `opengato serve`: watch a checkpoint play, caption, chat, compare."""
