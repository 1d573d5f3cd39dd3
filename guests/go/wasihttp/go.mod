module fibhost/wasihttp

go 1.27
