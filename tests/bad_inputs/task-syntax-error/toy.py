task = (
  1 2
