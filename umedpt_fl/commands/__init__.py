"""One module per `umedpt-fl` command (or command group); ``umedpt_fl.cli`` registers them."""
