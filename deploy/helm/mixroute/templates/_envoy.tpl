{{/*
Envoy's static bootstrap; the same shape as deploy/envoy/*.yaml (which `envoy --mode
validate` checks). Call with (dict "root" $ "upstreams" <list of {name, host, port}>); an
empty list means: everything goes to the balancers.
*/}}
{{- define "mixroute.envoyCluster" -}}
- name: {{ .name }}
  type: STRICT_DNS
  dns_refresh_rate: 5s
  connect_timeout: {{ .connectTimeout | default "5s" }}
  lb_policy: LEAST_REQUEST
  {{- if .http2 }}
  typed_extension_protocol_options:
    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
      "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
      explicit_http_config:
        http2_protocol_options: {}
  {{- end }}
  circuit_breakers:
    thresholds:
    - {max_connections: 100000, max_pending_requests: 100000, max_requests: 100000}
  {{- if .healthPath }}
  health_checks:
  - timeout: 2s
    interval: 5s
    unhealthy_threshold: 2
    healthy_threshold: 1
    http_health_check: {path: {{ .healthPath }}}
  {{- end }}
  {{- if .outlier }}
  outlier_detection:
    consecutive_5xx: 3
    base_ejection_time: 1s
    max_ejection_time: 30s
  {{- end }}
  load_assignment:
    cluster_name: {{ .name }}
    endpoints:
    - lb_endpoints:
      - endpoint:
          address:
            socket_address: {address: {{ .host }}, port_value: {{ .port }}}
{{- end -}}

{{- define "mixroute.envoyBootstrap" -}}
{{- $root := .root -}}
{{- $upstreams := .upstreams -}}
{{- $routeTail := "timeout: 0s, idle_timeout: 300s" -}}
admin:
  # Loopback only; probes and Prometheus use the read-only envoy_stats listener.
  address:
    socket_address: {address: 127.0.0.1, port_value: 9901}
overload_manager:
  resource_monitors:
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: {{ int $root.Values.envoy.maxConnections }}
static_resources:
  listeners:
  - name: ingress_http
    address:
      socket_address: {address: 0.0.0.0, port_value: {{ $root.Values.envoy.port }}}
    # Bounds the request body buffered for ext_proc (413 above it).
    per_connection_buffer_limit_bytes: {{ int $root.Values.envoy.maxRequestBytes }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          codec_type: AUTO
          stream_idle_timeout: 300s
          request_timeout: 0s
          generate_request_id: true
          preserve_external_request_id: true
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
          route_config:
            name: mixroute
            virtual_hosts:
            - name: mixroute
              domains: ["*"]
              routes:
              {{- if not $upstreams }}
              - match: {prefix: /}
                route: {cluster: mixroute_balancer, {{ $routeTail }}}
              {{- else }}
              - match:
                  prefix: /
                  headers: [{name: x-gateway-destination-endpoint, present_match: true}]
                route: {cluster: picked_endpoint, {{ $routeTail }}}
              {{- range $upstreams }}
              - match:
                  prefix: /
                  headers: [{name: x-selected-model, string_match: {exact: {{ .name | quote }}}}]
                route: {cluster: {{ printf "model_%s" .name | quote }}, {{ $routeTail }}}
              {{- end }}
              - match: {prefix: /}
                direct_response:
                  status: 404
                  body:
                    inline_string: '{"error": {"message": "no model was selected for this request", "type": "invalid_request_error", "code": "model_not_found"}}'
                response_headers_to_add:
                - header: {key: content-type, value: application/json}
              {{- end }}
          # Routing headers are mixroute's to set, never the client's: dropped before the
          # route is first resolved.
          early_header_mutation_extensions:
          - name: strip-routing-headers
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation
              mutations:
              - remove: x-selected-model
              - remove: x-gateway-destination-endpoint
          http_filters:
          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service:
                envoy_grpc: {cluster_name: mixroute_extproc}
                timeout: 30s
              # Fail closed: without mixroute a request is not classified, not guarded and
              # names a model (MoM) no backend serves; it fails rather than goes upstream.
              failure_mode_allow: false
              processing_mode:
                request_header_mode: SEND
                request_body_mode: BUFFERED
                request_trailer_mode: SKIP
                response_header_mode: SEND
                response_body_mode: NONE
                response_trailer_mode: SKIP
              # mixroute asks for the response body when it needs the answer (cache, PII,
              # tokens per minute).
              allow_mode_override: true
              # The client's address, for per-address limits on anonymous callers.
              request_attributes: ["source.address"]
              message_timeout: {{ $root.Values.envoy.messageTimeout }}
              route_cache_action: CLEAR
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: envoy_stats
    address:
      socket_address: {address: 0.0.0.0, port_value: 9902}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: envoy_stats
          route_config:
            name: stats
            virtual_hosts:
            - name: stats
              domains: ["*"]
              routes:
              - match:
                  path: /ready
                  headers: [{name: ":method", string_match: {exact: GET}}]
                route: {cluster: envoy_admin}
              - match:
                  path: /stats/prometheus
                  headers: [{name: ":method", string_match: {exact: GET}}]
                route: {cluster: envoy_admin}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  {{- include "mixroute.envoyCluster" (dict "name" "mixroute_extproc" "host" (include "mixroute.componentName" (dict "root" $root "component" "extproc")) "port" (int $root.Values.extproc.port) "connectTimeout" "1s" "http2" true) | nindent 2 }}
  {{- if not $upstreams }}
  {{- include "mixroute.envoyCluster" (dict "name" "mixroute_balancer" "host" (include "mixroute.componentName" (dict "root" $root "component" "balancer")) "port" (int $root.Values.balancer.port) "connectTimeout" "2s" "healthPath" "/health") | nindent 2 }}
  {{- else }}
  {{- range $upstreams }}
  {{- include "mixroute.envoyCluster" (dict "name" (printf "model_%s" .name) "host" .host "port" .port "healthPath" "/health" "outlier" true) | nindent 2 }}
  {{- end }}
  - name: picked_endpoint
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 5s
    cleanup_interval: 60s
    original_dst_lb_config:
      use_http_header: true
      http_header_name: x-gateway-destination-endpoint
    circuit_breakers:
      thresholds:
      - {max_connections: 100000, max_pending_requests: 100000, max_requests: 100000}
  {{- end }}
  - name: envoy_admin
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: envoy_admin
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {address: 127.0.0.1, port_value: 9901}
{{- end -}}
