"""Everything that speaks FreshBooks: OAuth, tokens, the resource catalogue and the API client."""
