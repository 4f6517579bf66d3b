"""From a request to runs: validated request, protocols, run specs and ids, default grid."""
