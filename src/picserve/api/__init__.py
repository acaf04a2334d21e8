"""HTTP: the one PICPIK endpoint (POST /), result downloads, health. Imports no torch."""
