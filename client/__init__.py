"""The hospital side: a Flower ClientApp over the umedpt trainer, and the `client` command."""
