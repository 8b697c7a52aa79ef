"""`python -m scalpnet <verb>`."""

from scalpnet.cli import main

raise SystemExit(main())
