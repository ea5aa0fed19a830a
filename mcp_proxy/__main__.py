from mcp_proxy.cli import main

raise SystemExit(main())
