from capro.cli import main

raise SystemExit(main())
