"""One router module per resource; each serves its pages and its JSON API under `/api`."""
