from napari_unet.cli.main import main

raise SystemExit(main())
