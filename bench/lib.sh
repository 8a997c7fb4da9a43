# Shared helpers of the bench scripts (bench/split_vs_plain.sh, bench/shadow.sh): sourced, not
# run. Needs python3 (free ports) and nginx (origins).

die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits (up to 10 s) until something listens on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  die "nothing listening on $1"
}

# Writes DIR/nginx.conf: one nginx process (master_process off: SIGKILL really closes every
# socket), one worker, listening on 127.0.0.1:PORT, `location / { LOCATION }`.
nginx_origin_conf() { # dir port location
  local dir=$1 port=$2 location=$3
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log crit;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir;
  uwsgi_temp_path $dir; scgi_temp_path $dir;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$port reuseport;
    location / { $location }
  }
}
CONF
}
