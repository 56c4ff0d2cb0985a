"""The text form of the IR: a canonical printer and a parser that reads it back exactly.

``print_ir(parse_ir(print_ir(g), constants)) == print_ir(g)`` for every graph ``g``, with
constants bit for bit. The grammar is ``grammar.lark``; a sketch of the syntax::

    graph @cnn(%x: f32[N,3,32,32]) -> (output: f32[N,6,16,16]) {
      const @conv.w: f32[6,3,3,3] = external
      const @conv.b: f32[6] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
      %0 = conv2d(%x, @conv.w, @conv.b) {stride=[2, 2], padding=[1, 1, 1, 1]} : f32[N,6,16,16]
      %1 = relu(%0) : f32[N,6,16,16] loc("cnn.py":24 "act" [fuse])
      return %1
    }
"""

from .errors import IRParseError
from .parser import parse_ir
from .printer import print_ir
from .storage import load_ir, save_ir

__all__ = ["IRParseError", "load_ir", "parse_ir", "print_ir", "save_ir"]
