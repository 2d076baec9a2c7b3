task = 'sst2'
