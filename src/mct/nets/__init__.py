"""Network architectures MCT owns, each constructible from a config dict."""
