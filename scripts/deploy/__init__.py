"""Hand-off to KServe: storage layouts and manifests (``maas deploy kserve``); no orchestration of our own."""
