"""nimbus.passes: the pass manager, pipeline text, pattern rewriting and every pass.

Each pass lives in its own module, imported here so that it registers itself.
"""

from . import (canonicalize, clip, eliminate_common_subexpressions,  # noqa: F401
               eliminate_dead_code, fold_batchnorm, fold_constants, fuse, prune, quantize,
               share_weights)
from .manager import PassContext, PassError, PassFailure, PassManager, PassReport, run_passes
from .pipeline import Pipeline, PipelineError, parse_pipeline
from .pipelines import DEFAULT_OPTIMIZATION
from .registry import PassInfo, PassRegistryError, all_passes, get_pass, register_pass

__all__ = ["DEFAULT_OPTIMIZATION", "PassContext", "PassError", "PassFailure", "PassInfo",
           "PassManager", "PassRegistryError", "PassReport", "Pipeline", "PipelineError",
           "all_passes", "get_pass", "parse_pipeline", "register_pass", "run_passes"]
