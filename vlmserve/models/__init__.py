"""Model families, the catalogue, and writers of tiny and full-size checkpoint folders."""
