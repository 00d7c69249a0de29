"""What people run on top of the library: the command line (:mod:`~ttcalc.app.cli`), the demo, the
benchmark runner (``ttcalc bench md``) and the plots. Nothing in the library imports it (bar
``python -m ttcalc``), so it imports nothing here on its own."""
