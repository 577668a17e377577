"""``python -m lookhere.cli``: the same as the ``lookhere`` command."""

import sys

from lookhere.cli import main

sys.exit(main())
