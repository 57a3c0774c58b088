from wubugen.cli import main

raise SystemExit(main())
