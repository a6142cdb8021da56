"""`bertserve evaluate fill-mask`: masked-token accuracy and MLM perplexity, with the server's code."""
