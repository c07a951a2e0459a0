"""HTTP routes: thin handlers over the runtime's packages."""
