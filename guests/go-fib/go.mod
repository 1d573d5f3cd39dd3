module fibhost/go-fib

go 1.27

require fibhost/wasihttp v0.0.0

// The glue package lives in this repository; nothing is fetched.
replace fibhost/wasihttp => ../go/wasihttp
