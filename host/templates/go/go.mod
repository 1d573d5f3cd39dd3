module {{name}}

go 1.27

require fibhost/wasihttp v0.0.0

// fibhost's glue package (wasi:http for Go), written into this project by `fibhost new`.
replace fibhost/wasihttp => ./wasihttp
