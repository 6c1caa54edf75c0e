# Sourced by tests/remote_test.sh and bench/remote.sh: prints the configuration of a test nginx —
# in the foreground, one process, everything it writes under DIR, serving ROOT on 127.0.0.1:PORT;
# EXTRA (optional) goes inside the server block.
#   nginx_conf DIR PORT ROOT [EXTRA] > DIR/nginx.conf
nginx_conf() {
  local dir=$1 port=$2 root=$3 extra=${4:-}
  cat <<EOF2
daemon off; master_process off; worker_processes 1;
pid $dir/nginx.pid; error_log $dir/error.log;
events { worker_connections 512; }
http {
  access_log off; default_type application/octet-stream;
  client_body_temp_path $dir/tmp/body; proxy_temp_path $dir/tmp/proxy; fastcgi_temp_path $dir/tmp/fcgi;
  uwsgi_temp_path $dir/tmp/uwsgi; scgi_temp_path $dir/tmp/scgi;
  server {
    listen 127.0.0.1:$port; root $root;
    $extra
  }
}
EOF2
}
