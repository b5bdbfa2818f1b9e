"""The hospital side: a Flower ClientApp over the umedpt trainer (``client.app``)."""
