"""Episodes on disk: expert demonstrations in Minari datasets, the expert/random score table,
and the text, question/answer and image-caption corpora."""
