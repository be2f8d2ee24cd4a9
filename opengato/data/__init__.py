"""Data on disk and how it is made, imports running one way down this list: `root` (where the
data lives, DatasetError), `episodes` (Minari episodes of a task), `scores` (the expert/random
scores table and the demonstration filter), `generator` (one seeded episode, in a worker),
`images` and `corpora` (text and image-caption corpora), `collect` (`opengato collect`)."""
