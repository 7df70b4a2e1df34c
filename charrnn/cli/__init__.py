"""The `charrnn` command line: one module per command group, on top of the library.

`app.py` assembles the commands; `common.py` holds what they share (consoles, option types,
the error handler). Each command parses its options, calls the library and prints; the
library below never imports this package.
"""

from charrnn.cli.app import app, main

__all__ = ["app", "main"]
