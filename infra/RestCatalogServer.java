// The local Iceberg REST catalog of the production-shaped stack (started by infra/rest_catalog.py
// with Java's single-file source launcher: no build step, the classpath is pinned in jars.lock).
//
// It serves Iceberg's own REST server classes (RESTCatalogServlet over RESTCatalogAdapter, from
// iceberg-core's tests jar, the pair Iceberg's RESTCatalogServer fixture runs) over a JDBC
// catalog. It does not run RESTCatalogServer itself, because that fixture binds every network
// interface, checks no credentials at all, and logs every catalog property (S3 secrets
// included) at INFO. Here:
//   - Jetty listens on the loopback address given (rest.host) only;
//   - every request must carry "Authorization: Bearer <rest.token>", compared in constant time,
//     else it is answered 401 before it reaches the catalog (Iceberg's Spark and PyIceberg REST
//     clients send exactly this header for their `token` property);
//   - the configuration, secrets included, comes from a properties file (mode 600) whose path is
//     the only argument, and nothing of it is logged.
//
// Properties: rest.host, rest.port, rest.token, and catalog.<key> for each Iceberg catalog
// property of the backing JDBC catalog (uri, warehouse, io-impl, s3.*, client.region, ...).

import jakarta.servlet.DispatcherType;
import jakarta.servlet.Filter;
import jakarta.servlet.FilterChain;
import jakarta.servlet.ServletException;
import jakarta.servlet.ServletRequest;
import jakarta.servlet.ServletResponse;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import java.io.IOException;
import java.io.Reader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.util.EnumSet;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import org.apache.iceberg.CatalogUtil;
import org.apache.iceberg.catalog.Catalog;
import org.apache.iceberg.rest.RESTCatalogAdapter;
import org.apache.iceberg.rest.RESTCatalogServlet;
import org.eclipse.jetty.ee10.servlet.FilterHolder;
import org.eclipse.jetty.ee10.servlet.ServletContextHandler;
import org.eclipse.jetty.ee10.servlet.ServletHolder;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;

public class RestCatalogServer {
  private static final String CATALOG_PREFIX = "catalog.";

  /** Refuses every request whose bearer token is missing or wrong (401, an Iceberg error body). */
  static final class BearerTokenFilter implements Filter {
    private final byte[] expected;

    BearerTokenFilter(String token) {
      if (token == null || token.isBlank()) {
        throw new IllegalArgumentException("rest.token is empty: refusing to serve without auth");
      }
      this.expected = ("Bearer " + token).getBytes(StandardCharsets.UTF_8);
    }

    @Override
    public void doFilter(ServletRequest request, ServletResponse response, FilterChain chain)
        throws IOException, ServletException {
      String header = ((HttpServletRequest) request).getHeader("Authorization");
      byte[] given = header == null ? new byte[0] : header.getBytes(StandardCharsets.UTF_8);
      if (MessageDigest.isEqual(expected, given)) {
        chain.doFilter(request, response);
        return;
      }
      HttpServletResponse http = (HttpServletResponse) response;
      http.setStatus(HttpServletResponse.SC_UNAUTHORIZED);
      http.setHeader("WWW-Authenticate", "Bearer");
      http.setContentType("application/json");
      http.getWriter()
          .write(
              "{\"error\":{\"message\":\"missing or wrong bearer token\","
                  + "\"type\":\"NotAuthorizedException\",\"code\":401}}");
    }
  }

  public static void main(String[] args) throws Exception {
    if (args.length != 1) {
      throw new IllegalArgumentException("usage: RestCatalogServer <properties file>");
    }
    Properties props = new Properties();
    try (Reader in = Files.newBufferedReader(Path.of(args[0]), StandardCharsets.UTF_8)) {
      props.load(in);
    }
    Map<String, String> catalogProps = new HashMap<>();
    for (String key : props.stringPropertyNames()) {
      if (key.startsWith(CATALOG_PREFIX)) {
        catalogProps.put(key.substring(CATALOG_PREFIX.length()), props.getProperty(key));
      }
    }
    catalogProps.putIfAbsent("catalog-impl", "org.apache.iceberg.jdbc.JdbcCatalog");
    catalogProps.putIfAbsent("jdbc.schema-version", "V1");
    Catalog catalog = CatalogUtil.buildIcebergCatalog("ohlcv_rest_backend", catalogProps, null);

    ServletContextHandler context = new ServletContextHandler(ServletContextHandler.NO_SESSIONS);
    context.addFilter(
        new FilterHolder(new BearerTokenFilter(props.getProperty("rest.token"))),
        "/*",
        EnumSet.of(DispatcherType.REQUEST));
    context.addServlet(
        new ServletHolder(new RESTCatalogServlet(new RESTCatalogAdapter(catalog))), "/*");

    Server server = new Server();
    ServerConnector connector = new ServerConnector(server);
    connector.setHost(props.getProperty("rest.host", "127.0.0.1"));
    connector.setPort(Integer.parseInt(props.getProperty("rest.port")));
    server.addConnector(connector);
    server.setHandler(context);
    server.start();
    System.err.println(
        "iceberg REST catalog listening on http://"
            + connector.getHost()
            + ":"
            + connector.getLocalPort());
    server.join();
  }
}
