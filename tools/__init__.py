"""threeway's tools: the network-namespace lab (`lb-lab`) and the servers it runs."""
