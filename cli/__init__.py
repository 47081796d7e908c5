"""The ``ohlcv`` command line: a thin skin over the library.

Each command (``cli.stack``, ``cli.pipeline``, ``cli.read``) parses its arguments
(``cli.params``), calls one library function and hands the result to ``cli.output``;
expected failures become one line and an exit code in ``cli.errors``. ``cli.main`` assembles
the ``ohlcv`` app.
"""
