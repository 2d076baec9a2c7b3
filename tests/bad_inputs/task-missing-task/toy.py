name = 'toy'
