"""(space, value) <-> tokens: the space walk, value codecs, the token stream, the tokenizer and
the SentencePiece text model. Pure numpy: nothing here imports torch."""
