"""`bertserve batch`: one task over every row of a file, on Ray Data, with the server's task code."""
