"""Named pipelines: the default optimization, as a straight list of steps."""

DEFAULT_OPTIMIZATION = ",".join([
    "canonicalize",                     # export's idioms -> linear layers, fewer reshapes
    "fold-constants",                   # weight transposes and arithmetic on constants
    "fold-batchnorm",                   # batch norms into the conv or linear before them
    "eliminate-common-subexpressions",  # one node per distinct computation
    "fuse",                             # epilogues, attention, normalizations, regions
    "eliminate-dead-code",
])
