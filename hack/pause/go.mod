module mlops.local/pause

go 1.22
