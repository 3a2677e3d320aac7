"""The `acml` command line: parses arguments, builds config objects, calls the library."""
