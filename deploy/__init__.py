"""The deployment kit; a package so that tests import deploy.render (never installed)."""
