"""``python -m interventions.distributed``: see :mod:`interventions.distributed.cli`."""

import sys

from .cli import main

sys.exit(main())
