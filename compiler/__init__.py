"""nimbus.compiler: the IR, the op table, the text form, front ends and the reference interpreter.

Submodules are imported where they are used; this package itself imports nothing heavy.
"""
