from epiprune.cli import main

raise SystemExit(main())
