"""How a migration of this tree runs, on any engine, whatever it changes: it knows no table and no revision id.
A later revision reuses it without touching ``build144``."""
