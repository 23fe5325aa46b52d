"""``python -m negdiff`` is the same as the ``negdiff`` console script."""

from negdiff.cli import main

raise SystemExit(main())
