from kernelgym.cli import main

raise SystemExit(main())
