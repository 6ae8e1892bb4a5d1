"""Use cases, one home each: what a command and a dock both call.

Qt-free: ``commands/`` (argparse and printing) and ``_widgets/`` (Qt layout and wiring) are the
two faces; they call these functions, which call the core (``io``, ``models``, ``inference``,
``training``).
"""
