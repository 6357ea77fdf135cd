"""``python -m iteach_fast ...`` is ``iteach-fast ...`` (see :mod:`iteach_fast.cli`)."""
import sys

from .cli import main

sys.exit(main())
