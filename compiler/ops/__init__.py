"""The op table: every op nimbus knows, declared once (see ``registry.define``).

Importing this package registers every family module; ``OP_TABLE`` maps op names to ``OpDef``.
"""

from . import elementwise, fused, nn, quant, reduce, shape  # noqa: F401  (each registers its ops)
from .registry import OP_TABLE, REQUIRED, Attr, OpDef, OpError, cost, define, get_op, infer_node

__all__ = ["OP_TABLE", "REQUIRED", "Attr", "OpDef", "OpError", "cost", "define", "get_op",
           "infer_node"]
