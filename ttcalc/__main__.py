"""``python -m ttcalc ...`` is the ``ttcalc`` command (torchrun needs a module: ``-m ttcalc``)."""
from ttcalc.app.cli import main

raise SystemExit(main())
